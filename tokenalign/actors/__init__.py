"""Ray actors of a run: rollout actors, the learner actor, the reward service, the weight store, a run's pairs."""
