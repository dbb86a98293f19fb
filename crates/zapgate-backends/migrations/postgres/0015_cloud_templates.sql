-- Tenant templates that are Cloud API (provider) templates: `body` then
-- holds the template's JSON (name, language, components with {{variables}}).
ALTER TABLE templates ADD COLUMN kind TEXT NOT NULL DEFAULT 'text';
