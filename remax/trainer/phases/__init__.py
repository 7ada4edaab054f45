"""The phases of one training step, each a module behind a small function:

    rollout.py  prompts -> n sampled responses per prompt (+ the greedy baseline), one generate call
    score.py    sampled and greedy rows -> rewards, one reward call; the rollout's metrics
    prepare.py  reference log-probs, advantages, old log-probs / critic targets -> `Batch`
    update.py   epochs x minibatches x micro-batches of gradient accumulation, clip, step
    persist.py  the run on disk: snapshot, checkpoints, start / resume, stop, final/

They take what they use (the config, the resolved `Recipe`, models, optimizers, the
`Dist`), not the Trainer, which wires them together in `remax/trainer/loop.py`. None of
them branches on an algorithm's name: what differs comes from the spec."""
