"""The synchronous server/worker step protocol over mpi4py."""
