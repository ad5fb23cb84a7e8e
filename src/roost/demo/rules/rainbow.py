"""A heartbeat: every two seconds the Lounge Lamp takes the next step of a brightness rainbow."""

from collections import deque

from roost.rules import HeartBeat, Rule

LEVELS = (10, 30, 50, 70, 90, 70, 50, 30)


class RainbowHeartbeat(Rule):
    """While the Kettle Plug is on, the Lounge Lamp steps through a rainbow of brightness every 2 seconds."""

    def initial_state(self):
        self.levels = deque(LEVELS)

    def register_triggers(self):
        return (HeartBeat("2s"),)

    def action(self, *args):
        if self.Kettle_Plug.on:
            self.Lounge_Lamp.brightness = self.levels[0]
            self.levels.rotate(-1)
