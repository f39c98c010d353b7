"""Reading the study's results: tables, effects, coverage, the claims table and the ORM report."""
