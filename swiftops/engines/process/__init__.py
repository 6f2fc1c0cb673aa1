"""The pt engine in its own process, behind the `InferEngine` interface (`EngineProcessClient`)."""
