"""The process's memory from /proc/self/status (Linux): read by `vlu bench` and `vlu restore`."""
import re


def status_kb(field):
    """A `kB` field of /proc/self/status (VmRSS, VmHWM), or None where there is no such file."""
    try:
        with open('/proc/self/status') as f:
            match = re.search(rf'^{field}:\s+(\d+) kB', f.read(), re.MULTILINE)
    except OSError:
        return None
    return int(match.group(1)) if match else None


def current_peak_rss_mb():
    """The process's peak RSS so far, in MiB (VmHWM), or None off Linux."""
    kb = status_kb('VmHWM')
    return None if kb is None else kb / 1024
