-- Allows a client into `conversation:{id}` only when its token lists that id in the
-- `conversations` claim (an array of strings or numbers), e.g. {"conversations": ["42"]}.
-- Other rooms (session rooms) are not this script's business and are allowed.

function authorize(ctx)
  local id = string.match(ctx.room or "", "^conversation:(.+)$")
  if id == nil then
    return true
  end
  local allowed = (ctx.claims or {}).conversations
  if type(allowed) ~= "table" then
    return false
  end
  for _, c in ipairs(allowed) do
    if tostring(c) == id then
      return true
    end
  end
  return false
end
