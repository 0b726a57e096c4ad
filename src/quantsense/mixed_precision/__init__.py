"""Mixed-precision plans: the reference's named strategies, budgeted allocation, the measured frontier."""
