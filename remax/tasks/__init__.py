"""Tasks with a verifiable reward, generated offline: the problems, the reward that checks
an answer, and a tiny model pretrained on them (`remax.tasks.arithmetic`; run
`python -m remax.tasks.arithmetic OUT` for the example end to end)."""
