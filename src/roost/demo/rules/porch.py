"""The porch light from dusk until 23:00."""

from roost.rules import AbsoluteTimeTrigger, Rule, SunTrigger


class PorchLight(Rule):
    """Porch Light on from dusk until 23:00."""

    def register_triggers(self):
        self.dusk = SunTrigger("dusk")
        self.bedtime = AbsoluteTimeTrigger("23:00")
        return (self.dusk, self.bedtime)

    def action(self, trigger, *_):
        self.Porch_Light.on = trigger is self.dusk
