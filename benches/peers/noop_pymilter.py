#!/usr/bin/env python3
"""A no-op milter on Debian's python3-milter (pymilter), for side-by-side benchmarks.

    python3 noop_pymilter.py SOCKET all|all-nr|eom [hdr]

SOCKET is a libmilter spec (unix:/path or inet:PORT@127.0.0.1). "all" answers every stage
with CONTINUE; "eom" negotiates only end-of-message (the other steps are switched off with
the @Milter.nocallback decorators' protocol negotiation); "all-nr" has a callback for every
stage but DATA and negotiates no reply to headers, end of headers and body chunks
(@Milter.noreply), as wasmail does: the same commands and replies on the wire. "hdr" adds
one header at EOM.
"""
import sys

import Milter

MODE = sys.argv[2] if len(sys.argv) > 2 else "all"
ADD_HEADER = len(sys.argv) > 3 and sys.argv[3] == "hdr"


class AllStages(Milter.Base):
    def connect(self, hostname, family, hostaddr):
        return Milter.CONTINUE

    def hello(self, hostname):
        return Milter.CONTINUE

    def envfrom(self, f, *args):
        return Milter.CONTINUE

    def envrcpt(self, to, *args):
        return Milter.CONTINUE

    def data(self):
        return Milter.CONTINUE

    def header(self, name, value):
        return Milter.CONTINUE

    def eoh(self):
        return Milter.CONTINUE

    def body(self, chunk):
        return Milter.CONTINUE

    def eom(self):
        if ADD_HEADER:
            self.addheader("X-Bench", "pymilter")
        return Milter.CONTINUE

    def abort(self):
        return Milter.CONTINUE

    def close(self):
        return Milter.CONTINUE


class AllStagesNoReply(AllStages):
    @Milter.nocallback
    def data(self):
        return Milter.CONTINUE

    @Milter.noreply
    def header(self, name, value):
        return Milter.CONTINUE

    @Milter.noreply
    def eoh(self):
        return Milter.CONTINUE

    @Milter.noreply
    def body(self, chunk):
        return Milter.CONTINUE


class EomOnly(Milter.Base):
    @Milter.nocallback
    def connect(self, hostname, family, hostaddr):
        return Milter.CONTINUE

    @Milter.nocallback
    def hello(self, hostname):
        return Milter.CONTINUE

    @Milter.nocallback
    def envfrom(self, f, *args):
        return Milter.CONTINUE

    @Milter.nocallback
    def envrcpt(self, to, *args):
        return Milter.CONTINUE

    @Milter.nocallback
    def data(self):
        return Milter.CONTINUE

    @Milter.nocallback
    def header(self, name, value):
        return Milter.CONTINUE

    @Milter.nocallback
    def eoh(self):
        return Milter.CONTINUE

    @Milter.nocallback
    def body(self, chunk):
        return Milter.CONTINUE

    def eom(self):
        if ADD_HEADER:
            self.addheader("X-Bench", "pymilter")
        return Milter.CONTINUE


def main():
    cls = {"all": AllStages, "all-nr": AllStagesNoReply}.get(MODE, EomOnly)
    Milter.factory = cls
    Milter.set_flags(Milter.ADDHDRS if ADD_HEADER else 0)
    Milter.runmilter("noop-pymilter", sys.argv[1], 240)


if __name__ == "__main__":
    main()
