"""The SO-101 arm and what is wired to it: LeRobot's robot adapter, port discovery and diagnosis, calibration, cameras."""
