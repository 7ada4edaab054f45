"""The supervised steps before ReMax, as in the paper's pipeline (and the authors'
DeepSpeed-Chat): `remax sft` (supervised fine-tuning, `remax.pipeline.sft`) and `remax rm`
(a Bradley-Terry reward model, `remax.pipeline.rm`), both on the trainer's own
infrastructure (`remax.pipeline.common`). Their outputs feed `remax train`:
`--model.policy SFT_DIR/final --reward.kind model --reward.model RM_DIR/final`."""

from remax.pipeline.rm import RMConfig, run_rm
from remax.pipeline.sft import SFTConfig, run_sft

__all__ = ["RMConfig", "SFTConfig", "run_rm", "run_sft"]
