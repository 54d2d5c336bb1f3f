"""Models: plain nn.Module blocks (components/), architectures (archs/) and LightningModules."""
