"""The policy: loading through LeRobot (hub download, preflight, legacy conversion), SmolVLA specifics, the scripted and demo policies, errors."""
