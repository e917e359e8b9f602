"""Stateful fakes of every port, for integration tests and users' own tests."""
