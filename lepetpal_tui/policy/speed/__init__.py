"""The CPU speed path for SmolVLA: CPU capabilities, int8 linears, lean denoiser, row-halves vision, the accuracy check's cache."""
