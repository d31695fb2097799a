"""On-policy distillation from many teachers (issue #6): not built yet.

It will reuse ``posttrain.policy.PolicyTrainer`` (any picklable loss object) and
``rollout.engine.RolloutEngine`` exactly as the GRPO loop does.
"""
