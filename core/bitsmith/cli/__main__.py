"""``python -m bitsmith.cli``.

Python puts the current folder first on ``sys.path`` for ``-m``; the ``bitsmith``
console script does not. It is taken out again here, so both behave the same and a
package folder in the current directory never shadows an installed library (use
``--path`` to import from a folder on purpose).
"""

import os
import sys

if sys.path and sys.path[0] in ("", os.getcwd()):
    del sys.path[0]

from . import main  # noqa: E402 - after the sys.path fix above

sys.exit(main())
