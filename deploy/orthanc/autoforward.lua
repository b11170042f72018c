-- Orthanc → WeCare auto-forward.
-- When a study has been quiet for Orthanc's "StableAge" seconds, send its ultrasound and
-- secondary-capture images to the modality "wecare" (declared in DicomModalities).
-- WeCare's own SEG and SR (Manufacturer "WeCare") are never sent back, and a study that
-- becomes stable again is re-sent harmlessly: WeCare ignores instances it already holds.

local FORWARDED_SOP_CLASSES = {
  ['1.2.840.10008.5.1.4.1.1.6.1'] = true,  -- Ultrasound Image
  ['1.2.840.10008.5.1.4.1.1.3.1'] = true,  -- Ultrasound Multi-frame Image
  ['1.2.840.10008.5.1.4.1.1.6']   = true,  -- Ultrasound Image (retired)
  ['1.2.840.10008.5.1.4.1.1.3']   = true,  -- Ultrasound Multi-frame Image (retired)
  ['1.2.840.10008.5.1.4.1.1.7']   = true,  -- Secondary Capture
}

function OnStableStudy(studyId, tags, metadata)
  local ids = {}
  for _, instance in pairs(ParseJson(RestApiGet('/studies/' .. studyId .. '/instances'))) do
    local t = ParseJson(RestApiGet('/instances/' .. instance['ID'] .. '/simplified-tags'))
    if FORWARDED_SOP_CLASSES[t['SOPClassUID']] and t['Manufacturer'] ~= 'WeCare' then
      table.insert(ids, instance['ID'])
    end
  end
  if #ids > 0 then
    RestApiPost('/modalities/wecare/store', DumpJson(ids, true))
  end
end
