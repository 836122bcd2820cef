"""The `snnconvert` command-line interface (`snnconvert.cli.main:app`)."""
