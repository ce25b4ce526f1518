"""Built-in fake of the upstream video API (see :mod:`.app` for routes and prompt markers)."""

from .app import create_simulator_app
from .config import SimulatorConfig
from .state import SimulatorState

__all__ = ["SimulatorConfig", "SimulatorState", "create_simulator_app"]
