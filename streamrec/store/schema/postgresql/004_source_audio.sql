-- The audio codec each source was last seen sending ("none": no audio), so a
-- segmenter copies AAC from its first launch instead of encoding it again.
ALTER TABLE streams ADD COLUMN source_audio TEXT;
