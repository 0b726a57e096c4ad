"""Mixed-precision plans: the reference's named strategies, sizes, budgeted allocation, frontier."""
