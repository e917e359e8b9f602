"""One reconcile tick: observe through the ports, plan with the core, apply through the ports."""
