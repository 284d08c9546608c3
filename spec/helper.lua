-- spec/helper.lua -- loaded by busted before every spec file (see .busted).
--
-- Makes the build directory's modules findable even when busted runs
-- without .busted's cpath (e.g. from another directory), and says how to
-- build smtp_core when it is missing instead of a bare "module not found".
local build = os.getenv("LUASMTPD_BUILD") or "build"
if not package.cpath:find(build .. "/?.so", 1, true) then
  package.cpath = build .. "/?.so;" .. package.cpath
end

local ok, err = pcall(require, "smtp_core")
if not ok then
  package.preload["smtp_core"] = function()
    error("smtp_core.so not found in " .. build .. "/: build it with "
      .. "`meson setup build && ninja -C build`, or point LUASMTPD_BUILD at your build "
      .. "directory\n(" .. tostring(err) .. ")", 2)
  end
end
