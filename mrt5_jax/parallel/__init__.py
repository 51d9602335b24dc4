"""Device meshes, logical-axis rules and multi-process start-up."""
