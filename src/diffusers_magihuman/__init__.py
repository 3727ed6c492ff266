# Copyright 2026 The diffusers-magihuman Authors. All rights reserved.
#
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#
#     http://www.apache.org/licenses/LICENSE-2.0
#
# Unless required by applicable law or agreed to in writing, software
# distributed under the License is distributed on an "AS IS" BASIS,
# WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.
# See the License for the specific language governing permissions and
# limitations under the License.
"""diffusers-magihuman: daVinci-MagiHuman (GAIR-NLP, Apache-2.0) as native diffusers components.

`import diffusers_magihuman` also registers the classes with diffusers, so that
`diffusers.DiffusionPipeline.from_pretrained(folder)` loads converted folders.
"""

__version__ = "0.1.0"

from diffusers import ModelMixin, SchedulerMixin  # noqa: F401  (diffusers' loader looks these up in our namespace)
from diffusers.pipelines.pipeline_utils import DiffusionPipeline  # noqa: F401

from .constants import DEFAULT_NEGATIVE_PROMPT
from .models.autoencoder_turbo_vaed import AutoencoderTurboVAED
from .models.transformer_magihuman import MagiHumanTransformer3DModel, MagiHumanTransformerOutput
from .pipelines.pipeline_magihuman import MagiHumanPipeline
from .pipelines.pipeline_magihuman_sr import MagiHumanSRPipeline
from .pipelines.pipeline_output import MagiHumanPipelineOutput
from .schedulers.scheduling_magihuman import MagiHumanScheduler
from .utils.audio import AutoencoderOobleckUntied
from .utils.video import export_to_video


__all__ = [
    "AutoencoderOobleckUntied",
    "AutoencoderTurboVAED",
    "DEFAULT_NEGATIVE_PROMPT",
    "MagiHumanPipeline",
    "MagiHumanPipelineOutput",
    "MagiHumanSRPipeline",
    "MagiHumanScheduler",
    "MagiHumanTransformer3DModel",
    "MagiHumanTransformerOutput",
    "export_to_video",
]

from ._diffusers_compat import register_magihuman_extensions as _register_extensions  # noqa: E402
from ._diffusers_compat import register_with_diffusers as _register  # noqa: E402


_register()
_register_extensions()
