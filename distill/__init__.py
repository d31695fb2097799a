"""On-policy distillation from many teachers (issue #6).

Built so far: ``distill.losses``, the streamed full-vocabulary multi-teacher loss.
Not yet: the teacher registry, the OPD loop and teacher scheduling; the loop will
reuse ``posttrain.core.policy.PolicyTrainer`` (any picklable loss object) and
``rollout.engine.RolloutEngine`` exactly as the GRPO loop does.
"""
