"""Bonded lights: switch either of two lights and the other follows."""

from roost.rules import Rule


class BondedLights(Rule):
    """Lounge Lamp and Porch Light switch on and off together."""

    def register_triggers(self):
        return (self.Lounge_Lamp, self.Porch_Light)

    def action(self, thing, property_name, new_value):
        if property_name != "on":
            return  # the porch light has no brightness to follow
        for light in self.triggering_things.values():
            light.on = new_value  # the light that changed already has it: setting it again does nothing
