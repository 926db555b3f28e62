"""The control engine: actuator tick, safety filter, chunk queue, macros, inference, telemetry and the engine process."""
