-- A voice channel may require DAVE (Discord's end-to-end encryption): the voice gateway refuses
-- clients that do not offer it (close 4017). 0/1; only ever 1 on a voice channel (the store
-- refuses it elsewhere).
ALTER TABLE channels ADD COLUMN require_dave INTEGER NOT NULL DEFAULT 0;
