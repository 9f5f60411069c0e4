"""One exception hierarchy. The CLI turns any of these into one line on stderr and an exit code."""


class VmigrateError(Exception):
    """Base of every error vmigrate raises on purpose; `exit_code` is what the CLI exits with."""

    exit_code = 1


class UsageError(VmigrateError):
    """Bad input from the user (scenario, flags, names): nothing was created. Exit code 2."""

    exit_code = 2


class ScenarioError(UsageError):
    """A scenario file or a --set override is invalid."""


class ClusterError(UsageError):
    """A cluster file (`vmigrate plan`) is invalid, or its VMs do not fit its hosts."""


class DrainError(UsageError):
    """A drain file (`vmigrate drain`) is invalid, or asks what a drain cannot do."""


class EnvironmentProblem(UsageError):
    """The machine lacks something (root, a package, a kernel feature); the message says the fix."""


class CommandFailed(VmigrateError):
    """An external command (ip, qemu-img, apt-get, ...) exited non-zero."""

    def __init__(self, argv: list[str], returncode: int, stderr: str) -> None:
        self.argv = argv
        self.returncode = returncode
        self.stderr = stderr
        last = stderr.strip().splitlines()[-1] if stderr.strip() else "no output"
        super().__init__(f"`{' '.join(argv)}` exited with {returncode}: {last}")


class ImageBuildError(VmigrateError):
    """The guest image could not be built."""


class TestbedError(VmigrateError):
    """The embedded testbed could not be brought up, inspected or torn down."""

    __test__ = False  # not a pytest test class, despite its name


class HypervisorError(VmigrateError):
    """The hypervisor (QEMU over QMP) refused or failed an operation."""


class GuestError(VmigrateError):
    """The guest did not boot, or its agent did not answer."""


class MigrationError(VmigrateError):
    """A migration could not be started or driven."""
