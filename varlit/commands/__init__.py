"""Sub-commands of the `varlit` console script that are not Lightning trainer runs."""
