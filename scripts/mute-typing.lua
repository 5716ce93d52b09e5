-- Drops the typing events of muted users: those whose token carries `muted = true`, and
-- those listed below. The event never reaches the room; the sender's ack says it was dropped.

local MUTED = {
  -- ["user-id"] = true,
}

function on_inbound(event, payload, ctx)
  if event ~= "typing:start" and event ~= "typing:stop" then
    return payload
  end
  local claims = ctx.claims or {}
  if claims.muted == true or MUTED[ctx.userId] then
    return nil
  end
  return payload
end
