-- Stamps every outbound event with the gateway's clock: `serverTime`, in Unix seconds.

function on_outbound(event, payload)
  payload.serverTime = os.time()
  return payload
end
