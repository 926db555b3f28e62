"""The Feetech protocol-0 wire format and the STS3215 register table, shared by the port doctor, the arm adapter and the simulator."""
