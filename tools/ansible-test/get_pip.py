# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Stand-in for the get-pip.py bootstrap script that ansible-test downloads into the virtual
environments of its sanity tests.

ansible-test fetches that script from a host this project cannot reach; its documented
work-around is to place a bootstrap script at ~/.ansible/test/cache/get_pip_<version>.py.
This one bootstraps pip with the interpreter's own ``ensurepip`` and then lets that pip
install what ansible-test asked for (``pip==<version>`` and friends) from the package index.
"""

from __future__ import annotations

import ensurepip
import os
import subprocess
import sys


def main() -> None:
    requested = [arg for arg in sys.argv[1:] if arg not in ("--no-setuptools", "--no-wheel")]
    # ensurepip points PIP_CONFIG_FILE at /dev/null in this process; the real install must see
    # the machine's pip configuration (index, CA bundle) again.
    env = dict(os.environ)
    ensurepip.bootstrap(upgrade=True)
    subprocess.check_call([sys.executable, "-m", "pip", "install", "--upgrade"] + requested, env=env)


if __name__ == "__main__":
    main()
