-- Drives wasmail's milter server with the real `miltertest` (OpenDKIM project).
-- Run by tests/all/milter_miltertest.rs with -D MILTER=unix:/path.
-- The server side is a scripted handler: see that file for what each input triggers.

local function check(cond, what)
  if not cond then error("FAILED: " .. what) end
end

local function open()
  local conn = mt.connect(MILTER, 20, 0.1)
  check(conn ~= nil, "mt.connect " .. tostring(MILTER))
  return conn
end

local function expect(conn, what, want)
  local got = mt.getreply(conn)
  check(got == want, what .. ": got reply " .. tostring(got) .. ", want " .. tostring(want))
end

-- 1. Negotiation: the actions the handler needs, and no no-reply flags it did not ask for.
local conn = open()
check(mt.negotiate(conn, nil, nil, nil) == nil, "negotiate")
for _, a in ipairs({ SMFIF_ADDHDRS, SMFIF_CHGHDRS, SMFIF_ADDRCPT, SMFIF_DELRCPT,
                     SMFIF_QUARANTINE, SMFIF_CHGFROM, SMFIF_MODBODY }) do
  check(mt.test_action(conn, a), "action " .. a .. " negotiated")
end
check(not mt.test_option(conn, SMFIP_NR_HDR), "no NR_HDR requested")
check(not mt.test_option(conn, SMFIP_NOCONNECT), "connect wanted")

-- 2. Every stage, macros, header and recipient edits.
mt.macro(conn, SMFIC_CONNECT, "j", "mx.test", "{daemon_name}", "smtpd")
check(mt.conninfo(conn, "client.example", "192.0.2.1") == nil, "conninfo")
expect(conn, "connect", SMFIR_CONTINUE)
check(mt.helo(conn, "client.example") == nil, "helo")
expect(conn, "helo", SMFIR_CONTINUE)
mt.macro(conn, SMFIC_MAIL, "{mail_addr}", "alice@example.com", "{auth_type}", "PLAIN")
check(mt.mailfrom(conn, "<alice@example.com>", "SIZE=1234", "BODY=8BITMIME") == nil, "mail")
expect(conn, "mail", SMFIR_CONTINUE)
mt.macro(conn, SMFIC_RCPT, "{rcpt_addr}", "bob@example.net", "i", "QID123")
check(mt.rcptto(conn, "<bob@example.net>") == nil, "rcpt bob")
expect(conn, "rcpt bob", SMFIR_CONTINUE)
check(mt.rcptto(conn, "<deleted@example.net>") == nil, "rcpt deleted")
expect(conn, "rcpt deleted", SMFIR_CONTINUE)
check(mt.rcptto(conn, "<nobody@example.net>") == nil, "rcpt nobody")
expect(conn, "rcpt nobody (per-recipient reject)", SMFIR_REJECT)
check(mt.data(conn) == nil, "data")
expect(conn, "data", SMFIR_CONTINUE)
check(mt.header(conn, "From", "alice@example.com") == nil, "header From")
expect(conn, "header", SMFIR_CONTINUE)
check(mt.header(conn, "Subject", "original") == nil, "header Subject")
expect(conn, "header", SMFIR_CONTINUE)
check(mt.header(conn, "X-Quarantine", "please") == nil, "header X-Quarantine")
expect(conn, "header", SMFIR_CONTINUE)
check(mt.eoh(conn) == nil, "eoh")
expect(conn, "eoh", SMFIR_CONTINUE)
check(mt.bodystring(conn, "hello world\r\n") == nil, "body")
expect(conn, "body", SMFIR_CONTINUE)
check(mt.bodyrandom(conn, 20000) == nil, "bodyrandom")
check(mt.eom(conn) == nil, "eom")
expect(conn, "eom", SMFIR_CONTINUE)
check(mt.eom_check(conn, MT_HDRADD, "X-Wasmail-Test"), "X-Wasmail-Test added")
local seen = mt.getheader(conn, "X-Wasmail-Test", 0)
mt.echo("X-Wasmail-Test: " .. tostring(seen))
check(string.find(seen, "helo=client.example", 1, true), "handler saw HELO: " .. seen)
check(string.find(seen, "from=<alice@example.com>", 1, true), "handler saw MAIL: " .. seen)
check(string.find(seen, "args=SIZE=1234,BODY=8BITMIME", 1, true), "handler saw ESMTP args: " .. seen)
check(string.find(seen, "rcpts=2", 1, true), "2 accepted recipients: " .. seen)
check(string.find(seen, "headers=3", 1, true), "3 headers: " .. seen)
check(string.find(seen, "client=192.0.2.1", 1, true), "client address: " .. seen)
check(string.find(seen, "j=mx.test", 1, true), "connect macro j kept: " .. seen)
check(string.find(seen, "i=QID123", 1, true), "rcpt macro i: " .. seen)
check(mt.eom_check(conn, MT_HDRINSERT, "X-Top", "top"), "X-Top inserted")
check(mt.eom_check(conn, MT_HDRCHANGE, "Subject", "changed"), "Subject changed")
check(mt.eom_check(conn, MT_HDRDELETE, "X-Quarantine"), "X-Quarantine deleted")
check(mt.eom_check(conn, MT_RCPTADD, "<added@example.net>"), "recipient added")
check(mt.eom_check(conn, MT_RCPTDELETE, "<deleted@example.net>"), "recipient deleted")
check(mt.eom_check(conn, MT_QUARANTINE, "quarantined by test"), "quarantined")

-- 3. A second message on the same connection, after ABORT; unknown command; verdicts at EOM.
check(mt.abort(conn) == nil, "abort")
local verdicts = {
  { "reject", SMFIR_REJECT }, { "tempfail", SMFIR_TEMPFAIL }, { "discard", SMFIR_DISCARD },
  { "accept", SMFIR_ACCEPT }, { "continue", SMFIR_CONTINUE },
}
for _, v in ipairs(verdicts) do
  check(mt.mailfrom(conn, "<carol@example.com>") == nil, "mail " .. v[1])
  expect(conn, "mail " .. v[1], SMFIR_CONTINUE)
  check(mt.rcptto(conn, "<bob@example.net>") == nil, "rcpt " .. v[1])
  expect(conn, "rcpt " .. v[1], SMFIR_CONTINUE)
  check(mt.header(conn, "X-Verdict", v[1]) == nil, "header " .. v[1])
  expect(conn, "header " .. v[1], SMFIR_CONTINUE)
  check(mt.eom(conn) == nil, "eom " .. v[1])
  expect(conn, "eom verdict " .. v[1], v[2])
  check(mt.abort(conn) == nil, "abort after " .. v[1])
end
check(mt.unknown(conn, "XFOO bar") == nil, "unknown")
expect(conn, "unknown", SMFIR_CONTINUE)
-- A custom reply at MAIL.
check(mt.mailfrom(conn, "<reject@example.com>") == nil, "mail reject")
expect(conn, "mail custom reply", SMFIR_REPLYCODE)
check(mt.disconnect(conn) == nil, "disconnect")

-- 4. Connection-level verdicts.
for _, v in ipairs({ { "reject.example", SMFIR_REJECT }, { "tempfail.example", SMFIR_TEMPFAIL },
                     { "accept.example", SMFIR_ACCEPT } }) do
  local c = open()
  check(mt.conninfo(c, v[1], "192.0.2.9") == nil, "conninfo " .. v[1])
  expect(c, "connect " .. v[1], v[2])
  mt.disconnect(c)
end
-- 5. Header/sender rewrite and a small body replacement (miltertest crashes above ~1 KB).
local c = open()
check(mt.conninfo(c, "client.example", "192.0.2.1") == nil, "conninfo")
check(mt.mailfrom(c, "<rewrite@example.com>") == nil, "mail rewrite")
check(mt.rcptto(c, "<bob@example.net>") == nil, "rcpt")
check(mt.header(c, "X-Replace", "yes") == nil, "header X-Replace")
check(mt.bodystring(c, "old body\r\n") == nil, "body")
check(mt.eom(c) == nil, "eom rewrite")
expect(c, "eom rewrite", SMFIR_CONTINUE)
check(mt.eom_check(c, MT_BODYCHANGE, "replaced body\r\n"), "body replaced")
check(mt.eom_check(c, MT_HDRADD, "X-Wasmail-Test"), "header added alongside body change")
mt.disconnect(c)
mt.echo("interop.lua: all checks passed")
