"""Bottom layer of the platform: what every other package may import (errors, the boundary)."""
