"""A 20-minute wake-up fade, later at weekends; both times can be changed over the API."""

from roost.rules import AbsoluteTimeTrigger, Rule, RuleProperty


class WakeUp(Rule):
    """Fade the Lounge Lamp up over 20 minutes at wake time: 06:30 on weekdays, 08:00 at weekends."""

    weekday_time = RuleProperty("06:30", type="string", title="Weekday wake time")
    weekend_time = RuleProperty("08:00", type="string", title="Weekend wake time")

    def register_triggers(self):
        return (
            AbsoluteTimeTrigger(self.weekday_time, weekdays="mon-fri"),
            AbsoluteTimeTrigger(self.weekend_time, weekdays="sat,sun"),
        )

    async def action(self, *args):
        self.Lounge_Lamp.brightness = 0
        self.Lounge_Lamp.on = True
        for level in range(1, 101):  # 100 steps of 12 s: 20 minutes
            await self.sleep("12s")
            self.Lounge_Lamp.brightness = level
