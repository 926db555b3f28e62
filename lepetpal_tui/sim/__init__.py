"""Simulated SO-101: six Feetech STS3215 servos speaking protocol 0 on a pty, in their own process.

Public entry point: `lepetpal_tui.sim.process.SimArm`. No textual, torch or lerobot imports here.
"""
