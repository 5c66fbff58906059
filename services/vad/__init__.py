"""vad: Silero voice activity detection per session; publishes speech start/stop."""
