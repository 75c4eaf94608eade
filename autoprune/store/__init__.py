"""Where studies live: SQL storage with heartbeats and retries through outages (``storage``), and the
artifact store for policies and the dense checkpoint (``artifacts``). The first layer that
imports Optuna."""
