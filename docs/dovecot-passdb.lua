-- wasmail passdb for Dovecot 2.3 (package dovecot-auth-lua): Dovecot asks wasmail to
-- verify each password against the domain registry (docs/dovecot.md).
--
--   passdb {
--     driver = lua
--     args = file=/etc/dovecot/wasmail-passdb.lua blocking=yes
--   }
--
-- Edit the two settings below. The key file is the one named by [dovecot] api_key_file
-- (readable by Dovecot's auth-worker user only: chown root:dovecot, chmod 0640).

local WASMAIL_URL = "http://127.0.0.1:9930/passdb"
local API_KEY_FILE = "/etc/wasmail/dovecot.key"
local API_KEY_HEADER = "X-API-Key"

local api_key = nil
local http = nil

local function urlencode(s)
  return (tostring(s or ""):gsub("[^%w%-%._~]", function(c)
    return string.format("%%%02X", string.byte(c))
  end))
end

function script_init()
  local f, err = io.open(API_KEY_FILE, "r")
  if f == nil then
    dovecot.i_error("wasmail passdb: cannot read " .. API_KEY_FILE .. ": " .. tostring(err))
    return -1
  end
  api_key = f:read("*a"):gsub("%s+", "")
  f:close()
  -- Below Dovecot's own auth timeouts; wasmail answers within [dovecot] request_timeout.
  http = dovecot.http.client({ timeout = 2000, max_attempts = 1, request_timeout_msecs = 2000 })
  return 0
end

function script_deinit()
end

function auth_password_verify(req, password)
  local r = http:request({ url = WASMAIL_URL, method = "POST" })
  r:add_header(API_KEY_HEADER, api_key)
  r:add_header("Content-Type", "application/x-www-form-urlencoded")
  r:set_payload("user=" .. urlencode(req.user) ..
                "&password=" .. urlencode(password) ..
                "&service=" .. urlencode(req.service) ..
                "&remote_ip=" .. urlencode(req.remote_ip))
  local resp = r:submit()
  local status = resp:status()
  if status == 200 then
    return dovecot.auth.PASSDB_RESULT_OK, resp:payload()
  elseif status == 403 then
    return dovecot.auth.PASSDB_RESULT_PASSWORD_MISMATCH, "password mismatch"
  elseif status == 404 then
    return dovecot.auth.PASSDB_RESULT_USER_UNKNOWN, "no such user"
  end
  return dovecot.auth.PASSDB_RESULT_INTERNAL_FAILURE, "wasmail passdb answered " .. tostring(status)
end

-- Credentials lookups (CRAM-MD5 and the like) would need the password hash itself;
-- wasmail keeps hashes to itself, so only plaintext mechanisms (PLAIN, LOGIN) work.
function auth_passdb_lookup(req)
  return dovecot.auth.PASSDB_RESULT_SCHEME_NOT_AVAILABLE, "wasmail verifies passwords itself"
end
