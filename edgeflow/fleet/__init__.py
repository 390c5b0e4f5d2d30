"""A node in a fleet: what a deployment runs and whether it is intact (:mod:`.release`), how an
over-the-air update is judged during its grace period (:mod:`.health`), and the status topic
each node reports to (:mod:`.status_topic`)."""
