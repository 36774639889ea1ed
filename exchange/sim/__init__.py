"""The reference agencies and the demo around them: who owns and reads what (``topology``), each
agency's config, what it plans to publish (``planner``), the running roles, generated records
(``generate``), and the demo's broker process, orchestration and report."""
