"""Downloads that show progress, resume a dropped connection with a Range request (or restart
when the server cannot), and fail in one line: the teacher zoo's (helper/teachers/zoo.py)."""
import http.client
import sys
import time
import urllib.error
import urllib.parse
import urllib.request

from helper.core.errors import UserError

CHUNK = 1 << 16


class Progress:
    """Progress on stdout: a carriage-return line on a terminal, else one line per quarter."""

    def __init__(self, label, total, out=None):
        self.label, self.total, self.out = label, total, out or sys.stdout
        self.tty = self.out.isatty()
        self.shown, self.last = -1, 0.0

    def __call__(self, done):
        mb = done / 1e6
        if self.total:
            pct = int(100 * done / self.total)
            text = f"{self.label}: {mb:.1f}/{self.total / 1e6:.1f} MB ({pct}%)"
        else:
            pct, text = -1, f"{self.label}: {mb:.1f} MB"
        now = time.monotonic()
        if self.tty:
            if now - self.last > 0.2 or (self.total and done >= self.total):
                self.out.write("\r" + text)
                self.out.flush()
                self.last = now
        elif self.total and pct // 25 > self.shown:
            self.shown = pct // 25
            print(text, file=self.out, flush=True)

    def end(self):
        if self.tty:
            self.out.write("\n")
            self.out.flush()


def _open(url, start, timeout):
    headers = {"User-Agent": "kd-toolbox"}
    if start:
        headers["Range"] = f"bytes={start}-"
    return urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout)


URL_SCHEMES = ("http", "https", "ftp", "file")


def check_url(url):
    """A ``UserError`` unless ``url`` is one urllib can download (a scheme and a place)."""
    parts = urllib.parse.urlsplit(str(url))
    if parts.scheme.lower() not in URL_SCHEMES or not (parts.netloc or parts.path):
        raise UserError(f"cannot download {url!r}: not a URL; give one starting with "
                        f"{', '.join(s + '://' for s in URL_SCHEMES)}")


def why(error):
    if isinstance(error, urllib.error.HTTPError):
        return f"HTTP {error.code} {error.reason}"
    if isinstance(error, urllib.error.URLError):
        reason = error.reason
        return getattr(reason, "strerror", None) or str(reason)
    return getattr(error, "strerror", None) or str(error) or type(error).__name__


def download(url, path, *, retries=3, timeout=60, log=print):
    """Download ``url`` into ``path``; a dropped connection is resumed with a Range request
    where the server answers 206, else the download restarts. Returns the byte count."""
    check_url(url)
    done, total, failures = 0, None, 0
    progress = None
    with open(path, "wb") as f:
        while True:
            try:
                response = _open(url, done, timeout)
            except urllib.error.HTTPError as e:
                raise UserError(f"cannot download {url}: {why(e)}; check the URL, or fetch the "
                                "archive by other means and use 'register'") from None
            except (urllib.error.URLError, OSError) as e:
                failures += 1
                if failures > retries or done == 0:
                    raise UserError(f"cannot download {url} ({why(e)}); check the network, or "
                                    "fetch the archive by other means and use 'register'") from None
                continue
            with response:
                status = getattr(response, "status", 200)
                if done and status != 206:  # the server ignores Range: start again
                    log(f"the server cannot resume; restarting the download at 0 of "
                        f"{total or '?'} bytes")
                    f.seek(0)
                    f.truncate()
                    done = 0
                length = response.headers.get("Content-Length")
                if total is None and length is not None:
                    total = int(length) + done
                if progress is None:
                    progress = Progress(f"downloading {url}", total)
                try:
                    while True:
                        chunk = response.read(CHUNK)
                        if not chunk:
                            break
                        f.write(chunk)
                        done += len(chunk)
                        progress(done)
                except (OSError, http.client.HTTPException) as e:
                    failures += 1
                    if failures > retries:
                        progress.end()
                        raise UserError(f"download of {url} failed after {retries} retries "
                                        f"({why(e)}); try again later") from None
                    log(f"connection lost at {done} bytes ({why(e)}); resuming")
                    continue
            if total is not None and done < total:
                failures += 1
                if failures > retries:
                    progress.end()
                    raise UserError(f"download of {url} stopped at {done} of {total} bytes after "
                                    f"{retries} retries; try again later")
                log(f"connection closed at {done} of {total} bytes; resuming")
                continue
            progress.end()
            return done
