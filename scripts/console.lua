-- scripts/console.lua -- the seed's first example: print every message and accept it.
--
-- Run: luasmtpd scripts/console.lua   (serves 127.0.0.1:2525, or what --listen says)
-- luasmtpd itself logs where it listens, real ports included, once per start
-- ("listening on 127.0.0.1:2525"); the script does not repeat it: it cannot
-- know --listen, and its top level runs again in every worker and on reload.
local smtp = require "smtp"

smtp.createServer(function(connection)
  connection:on("DATA", function(message)
    print("Message from " .. message.sender)
    message:on("data", function(chunk)
      io.write("DATA: ", chunk)
    end)
    message:on("end", function()
      print("EOT")
      message:accept()
    end)
  end)
end):listen(2525, "127.0.0.1")
