"""STS: AssumeRole, minting and verifying temporary credentials."""
