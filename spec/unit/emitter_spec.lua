-- Unit specs of smtp.emitter: registration, order, once/off, unknown names.
local Emitter = require "smtp.emitter"

local NAMES = { A = "A", B = "B", ["A ALIAS"] = "A" }

describe("smtp.emitter", function()
  it("keeps listeners in registration order", function()
    local e = Emitter.new(NAMES)
    local f1, f2 = function() end, function() end
    e:on("A", f1):on("A", f2)
    assert.same({ f1, f2 }, e:listeners("A"))
  end)

  it("maps an alias onto its canonical event", function()
    local e = Emitter.new(NAMES)
    local f = function() end
    e:on("A ALIAS", f)
    assert.same({ f }, e:listeners("A"))
    assert.is_true(e:has_listeners("A"))
    assert.is_false(e:has_listeners("B"))
  end)

  it("refuses an unknown event name where it is registered", function()
    local e = Emitter.new(NAMES)
    local ok, err = pcall(e.on, e, "C", function() end)
    assert.is_false(ok)
    assert.matches('unknown event C %(known: "A", "A ALIAS", "B"%)', err)
  end)

  it("refuses a listener that is not a function", function()
    local e = Emitter.new(NAMES)
    assert.has_error(function() e:on("A", 42) end, "listener must be a function, got number")
  end)

  it("take() hands out the listeners and drops the once ones", function()
    local e = Emitter.new(NAMES)
    local f1, f2 = function() end, function() end
    e:once("A", f1):on("A", f2)
    assert.same({ f1, f2 }, e:take("A"))
    assert.same({ f2 }, e:take("A"))
  end)

  it("off() removes one listener or all of an event", function()
    local e = Emitter.new(NAMES)
    local f1, f2 = function() end, function() end
    e:on("A", f1):on("A", f2):on("A", f1)
    e:off("A", f1)
    assert.same({ f2 }, e:listeners("A"))
    e:off("A")
    assert.same({}, e:listeners("A"))
    assert.is_false(e:has_listeners("A"))
  end)

  it("reports every change to its owner", function()
    local changes = {}
    local e = Emitter.new(NAMES, function(_, name) changes[#changes + 1] = name end)
    local f = function() end
    e:on("A", f)
    e:once("B", f)
    e:take("B")
    e:off("A", f)
    assert.same({ "A", "B", "B", "A" }, changes)
  end)
end)
