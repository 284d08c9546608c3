-- smtp -- require "smtp": the policy API of luasmtpd (see docs/API.md).
--
-- Returns the instance bound to the platform the host installed: luasmtpd
-- sets package.loaded["smtp.platform"] (libevent timers) before it runs the
-- script; smtp.testing gives each loaded script an instance of its own on a
-- virtual clock.  Without a platform the API loads but timers raise.
return require("smtp.instance").new(package.loaded["smtp.platform"])
