"""The trainer classes nnU-Net finds by name (``nnUNetv2_train -tr <name>``, ``nnUNetv2_predict``).

The plugin installs a re-export of this module into ``nnunetv2/training/nnUNetTrainer/``; see
docs/registration.md.
"""

from nnunetv2_mtmd.training.trainers import schedules as _schedules
from nnunetv2_mtmd.training.trainers.add_domain import *  # noqa: F401,F403  (adding a domain to a model)
from nnunetv2_mtmd.training.trainers.add_domain import __all__ as _add_domain_all
from nnunetv2_mtmd.training.trainers.schedules import *  # noqa: F401,F403  (all schedule variants)
from nnunetv2_mtmd.training.trainers.schemes import *  # noqa: F401,F403  (the schemes)
from nnunetv2_mtmd.training.trainers.schemes import __all__ as _schemes_all
from nnunetv2_mtmd.training.trainers.study import *  # noqa: F401,F403  (study budget trainers)
from nnunetv2_mtmd.training.trainers.study import __all__ as _study_all

__all__ = [*_schemes_all, *_schedules.__all__, *_study_all, *_add_domain_all]
